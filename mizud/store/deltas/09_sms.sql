-- 09: SMS: a per-message price in the tariffs, an HTTP provider per gateway, and the SMS log.
ALTER TABLE tb_tariffs ADD COLUMN smsprice :money: NOT NULL DEFAULT 0;
ALTER TABLE tb_users ADD COLUMN smsurl TEXT NOT NULL DEFAULT '';
CREATE TABLE tb_sms (
    id :autoid:,
    userid :bigint: NOT NULL,
    anum TEXT NOT NULL DEFAULT '',
    bnum TEXT NOT NULL,
    body TEXT NOT NULL,
    parts INTEGER NOT NULL DEFAULT 1,
    direction TEXT NOT NULL DEFAULT 'out',
    route TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'pending',
    reason TEXT NOT NULL DEFAULT '',
    cost :money: NOT NULL DEFAULT 0,
    holdid :bigint: NOT NULL DEFAULT 0,
    created :timestamp: NOT NULL,
    finished :timestamp:
);
CREATE INDEX tb_sms_user ON tb_sms (userid, created);
