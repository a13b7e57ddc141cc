"""``python3 -m gcpdl.agent``: see gcpdl.agent.main."""

from gcpdl.agent.main import main

raise SystemExit(main())
