"""The stop contract and resume, by behaviour: what stops a run (test_signals, test_deadlines, test_non_finite,
test_lost_ranks), what the same command does next (test_resume_rules, test_exact_resume), and what a run leaves
(test_checkpoints, test_write_failures, test_run_directory). In-process tests (a fake peer rank in the ranks'
all-reduce) are in the quick tier; those that start real processes are marked slow."""
