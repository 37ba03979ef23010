-- 08: SIP servers and traffic senders (addserver) and the routing table.
ALTER TABLE tb_users ADD COLUMN domain TEXT NOT NULL DEFAULT '';
ALTER TABLE tb_users ADD COLUMN ip TEXT NOT NULL DEFAULT '';
ALTER TABLE tb_users ADD COLUMN port INTEGER NOT NULL DEFAULT 5060;
ALTER TABLE tb_users ADD COLUMN proxy TEXT NOT NULL DEFAULT '';
ALTER TABLE tb_users ADD COLUMN transport TEXT NOT NULL DEFAULT 'udp';
ALTER TABLE tb_users ADD COLUMN needauth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tb_users ADD COLUMN serverrole INTEGER NOT NULL DEFAULT 0;
CREATE TABLE tb_routing (
    id :autoid:,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL DEFAULT '',
    serverid :bigint: NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    created :timestamp: NOT NULL
);
CREATE INDEX tb_routing_server ON tb_routing (serverid);
