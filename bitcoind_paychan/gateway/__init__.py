"""`paychan gateway`: a reverse proxy that sells any HTTP upstream's answers through payment
channels (routes: routes.py; forwarding: upstream.py; the proxy: proxy.py; the sessions'
credit: credit.py). The protocol over HTTP is transport/paidhttp's."""

from bitcoind_paychan.gateway.credit import Credit
from bitcoind_paychan.gateway.proxy import Gateway
from bitcoind_paychan.gateway.routes import PER, Price, Route, route_for

__all__ = ["PER", "Credit", "Gateway", "Price", "Route", "route_for"]
