import sys

from node_api.app import main

sys.exit(main())
