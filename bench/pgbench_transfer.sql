-- What BillingStore.transfer sends to PostgreSQL, message for message
-- (BEGIN travels with the first statement, as mizud sends it).
\set a random(1, :nusers)
\set r random(0, :nusers - 2)
\set b 1 + (:a + :r) % :nusers
BEGIN\;SELECT id, currency FROM tb_users WHERE id IN (:a, :b) ORDER BY id FOR UPDATE;
UPDATE tb_users SET credit = credit + -0.010000 WHERE id = :a AND credit + -0.010000 >= CASE WHEN postpaid <> 0 THEN 0 - creditlimit ELSE 0 END RETURNING credit AS abal \gset
INSERT INTO tb_credits (userid, amount, balance, kind, reference, txid, comment, created) VALUES (:a, -0.010000, :abal, 'transfer_out', ':b', NULL, '', now()::timestamp) RETURNING id;
UPDATE tb_users SET credit = credit + 0.010000 WHERE id = :b RETURNING credit AS bbal \gset
INSERT INTO tb_credits (userid, amount, balance, kind, reference, txid, comment, created) VALUES (:b, 0.010000, :bbal, 'transfer_in', ':a', NULL, '', now()::timestamp) RETURNING id;
COMMIT;
