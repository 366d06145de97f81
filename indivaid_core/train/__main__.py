"""`python -m indivaid_core.train stage1|stage2 ...`: an entry point, see `repro.train_cli`."""

from indivaid_core.repro.train_cli import main

if __name__ == "__main__":
    main()
