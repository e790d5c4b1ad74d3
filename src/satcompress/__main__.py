from satcompress.cli import main

raise SystemExit(main())
