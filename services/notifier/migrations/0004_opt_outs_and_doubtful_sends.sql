-- A failed send that may have gone out (no answer, and the provider cannot be asked): "retry all
-- failed" leaves it out, so a patient never gets it twice; only a retry of that one row sends it.
ALTER TABLE notifications ADD COLUMN maybe_sent boolean NOT NULL DEFAULT false;
-- Rows given up before this column existed said so only in their reason.
UPDATE notifications SET maybe_sent = true
WHERE status = 'failed' AND reason LIKE '%not sent again, to never send twice%';

-- A STOP cancels the number's queued broadcast messages: found by phone, not by scanning a
-- broadcast's tens of thousands of queued rows.
CREATE INDEX notifications_queued_broadcast_by_phone ON notifications (tenant_id, phone)
    WHERE status = 'queued' AND broadcast_id IS NOT NULL;
