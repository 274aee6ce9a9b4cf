"""bitcoind-paychan: unidirectional (Spilman) payment channels beside a bitcoind."""

__version__ = "0.1.0"
