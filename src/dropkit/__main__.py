from dropkit.cli import main

raise SystemExit(main())
