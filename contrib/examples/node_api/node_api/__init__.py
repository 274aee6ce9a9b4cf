"""An upstream for `paychan gateway` that sells a node's data: its read-only RPC per call
(methods on an allow-list) and its new blocks as Server-Sent Events (see the README)."""
