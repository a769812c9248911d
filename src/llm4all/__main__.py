from llm4all.cli import main

raise SystemExit(main())
