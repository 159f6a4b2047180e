-- The sender's lookups cost the same with ten queued rows or a million.
-- Due rows by session: the sender finds each due session with one index probe (a skip scan),
-- and claims a session's rows in order from the same index.
DROP INDEX notifications_due;
CREATE INDEX notifications_due ON notifications (session, next_attempt_at, created_at) WHERE status = 'queued';
-- A broadcast's recipients still to settle: whether any are left is one probe, not a count of all.
CREATE INDEX notifications_unsettled_of_broadcast ON notifications (broadcast_id)
    WHERE broadcast_id IS NOT NULL AND status IN ('queued', 'sending', 'unknown');
