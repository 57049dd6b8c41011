from corral_emulator.cli import main

raise SystemExit(main())
