-- 05: SIP registrations (bindings), one row per contact; the registrar fills it.
CREATE TABLE tb_registrations (
    id :autoid:,
    userid :bigint: NOT NULL,
    username TEXT NOT NULL,
    contact TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT '',
    transport TEXT NOT NULL DEFAULT 'udp',
    useragent TEXT NOT NULL DEFAULT '',
    q :money: NOT NULL DEFAULT 1,
    expires :timestamp: NOT NULL,
    created :timestamp: NOT NULL,
    UNIQUE (userid, contact)
);
CREATE INDEX tb_registrations_expires ON tb_registrations (expires);
