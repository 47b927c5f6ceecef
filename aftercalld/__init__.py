"""aftercalld: after-call SMS for on-premise Asterisk and FreeSWITCH."""
__version__ = "0.1.0"
