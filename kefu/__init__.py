"""kefu: a customer-service chat server speaking goim's TLV protocol."""
__version__ = "0.1.0"
