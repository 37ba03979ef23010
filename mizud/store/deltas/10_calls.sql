-- 10: calls placed by p2p and callback: the live calls, and CDR columns that link a call's two legs.
CREATE TABLE tb_calls (
    id :autoid:,
    userid :bigint: NOT NULL,
    kind TEXT NOT NULL DEFAULT 'p2p',
    anum TEXT NOT NULL DEFAULT '',
    bnum TEXT NOT NULL DEFAULT '',
    cnum TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'calling',
    holdid :bigint: NOT NULL DEFAULT 0,
    held :money: NOT NULL DEFAULT 0,
    node TEXT NOT NULL DEFAULT '',
    sipcallida TEXT NOT NULL DEFAULT '',
    sipcallidb TEXT NOT NULL DEFAULT '',
    created :timestamp: NOT NULL,
    connected :timestamp:
);
CREATE INDEX tb_calls_user ON tb_calls (userid);
ALTER TABLE tb_cdrs ADD COLUMN callid :bigint: NOT NULL DEFAULT 0;
ALTER TABLE tb_cdrs ADD COLUMN leg TEXT NOT NULL DEFAULT '';
ALTER TABLE tb_cdrs ADD COLUMN answered :timestamp:;
ALTER TABLE tb_cdrs ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE INDEX tb_cdrs_callid ON tb_cdrs (callid);
