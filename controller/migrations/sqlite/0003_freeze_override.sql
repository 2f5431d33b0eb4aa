-- A deployment submitted inside a freeze window with override_freeze: the
-- override's record (window, reason, token name, time), JSON; NULL otherwise.
ALTER TABLE deployments ADD COLUMN freeze_override TEXT;
