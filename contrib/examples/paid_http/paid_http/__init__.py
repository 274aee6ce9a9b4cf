"""Pay-per-request HTTP over payment channels: an example application of the channel managers
(not part of the installed product)."""
