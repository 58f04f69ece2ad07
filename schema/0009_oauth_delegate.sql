-- 0009: Microsoft 365 shared mailboxes (issue 13 item 4).
--
-- oauth_delegate: the account that gives the OAuth consent for a mailbox it
-- may open but does not own (a shared mailbox). The IMAP login name stays
-- imap_email_provider_config.username (the shared mailbox's address, sent as
-- user= in XOAUTH2/OAUTHBEARER); the consent is checked against the delegate
-- instead and the sign-in page is hinted with it. NULL: the mailbox's own
-- user consents (username), as before. Set with `python -m imapsvc provider
-- set-oauth-delegate`.
ALTER TABLE imap_provider_options ADD COLUMN IF NOT EXISTS oauth_delegate text;
