import sys

from runner.app import explain_failed_overrides, main

try:
    main()
except SystemExit as exit_:
    if exit_.code not in (0, None):
        explain_failed_overrides(sys.argv[1:])
    raise
