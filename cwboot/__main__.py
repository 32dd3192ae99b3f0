from cwboot.cli import main

raise SystemExit(main())
