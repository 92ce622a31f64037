"""cme-mailbot: runs a council's Children Missing Education referral mailbox."""

__version__ = "0.1.0"
