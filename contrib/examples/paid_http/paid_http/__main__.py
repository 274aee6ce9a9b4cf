import sys

from paid_http.cli import main

sys.exit(main())
