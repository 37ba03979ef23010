-- 12: failed authentications counted in the database, so every node counts towards one lockout.
CREATE TABLE tb_authfailures (
    id :autoid:,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    at :timestamp: NOT NULL
);
CREATE INDEX tb_authfailures_key ON tb_authfailures (kind, value, at);
