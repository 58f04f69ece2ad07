"""imapsvc: IMAP folders in, INBOUND_EMAIL_RECEIVED events out."""
