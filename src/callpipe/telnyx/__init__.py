"""The Telnyx wire protocol (sans-I/O), REST client and webhook verification."""
