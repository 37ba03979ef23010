-- 07: SIP registrar state (RFC 3261 10.3 ordering), presence, stored instant messages.
ALTER TABLE tb_registrations ADD COLUMN callid TEXT NOT NULL DEFAULT '';
ALTER TABLE tb_registrations ADD COLUMN cseq :bigint: NOT NULL DEFAULT 0;
ALTER TABLE tb_registrations ADD COLUMN updated :timestamp:;
CREATE TABLE tb_presence (
    userid :bigint: PRIMARY KEY,
    status TEXT NOT NULL DEFAULT '',
    updated :timestamp: NOT NULL
);
CREATE TABLE tb_messages (
    id :autoid:,
    fromuser TEXT NOT NULL,
    touserid :bigint: NOT NULL,
    tousername TEXT NOT NULL,
    body TEXT NOT NULL,
    contenttype TEXT NOT NULL DEFAULT 'text/plain',
    created :timestamp: NOT NULL,
    delivered :timestamp:,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tb_messages_pending ON tb_messages (touserid, delivered);
