-- What BillingStore.debit sends to PostgreSQL (no transaction id): one
-- autocommit statement that updates the balance and writes its ledger row.
\set uid random(1, :nusers)
WITH changed AS (UPDATE tb_users SET credit = credit + -0.010000 WHERE id = :uid AND credit + -0.010000 >= CASE WHEN postpaid <> 0 THEN 0 - creditlimit ELSE 0 END RETURNING id, credit) INSERT INTO tb_credits (userid, amount, balance, kind, reference, txid, comment, created) SELECT id, -0.010000, credit, 'debit', '', NULL, '', now()::timestamp FROM changed RETURNING balance, id;
