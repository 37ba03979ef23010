-- What BillingStore.transfer sends to PostgreSQL, message for message:
-- BEGIN travels with the row locks; each side's balance update and ledger
-- row are one statement; then COMMIT.
\set a random(1, :nusers)
\set r random(0, :nusers - 2)
\set b 1 + (:a + :r) % :nusers
BEGIN\;SELECT id, currency FROM tb_users WHERE id IN (:a, :b) ORDER BY id FOR UPDATE;
WITH changed AS (UPDATE tb_users SET credit = credit + -0.010000 WHERE id = :a AND credit + -0.010000 >= CASE WHEN postpaid <> 0 THEN 0 - creditlimit ELSE 0 END RETURNING id, credit) INSERT INTO tb_credits (userid, amount, balance, kind, reference, txid, comment, created) SELECT id, -0.010000, credit, 'transfer_out', ':b', NULL, '', now()::timestamp FROM changed RETURNING balance, id;
WITH changed AS (UPDATE tb_users SET credit = credit + 0.010000 WHERE id = :b RETURNING id, credit) INSERT INTO tb_credits (userid, amount, balance, kind, reference, txid, comment, created) SELECT id, 0.010000, credit, 'transfer_in', ':a', NULL, '', now()::timestamp FROM changed RETURNING balance, id;
COMMIT;
