-- Copies of the saga's first unit's tables (columns, indexes, constraints),
-- 100 products with ample stock and 200,000 running sagas.
CREATE SEQUENCE pid;
CREATE SEQUENCE pidb START 1000000000000 INCREMENT 32;
CREATE TABLE p_orders (LIKE orders INCLUDING ALL);
CREATE TABLE p_order_items (LIKE order_items INCLUDING ALL);
CREATE TABLE p_order_timeline (LIKE order_timeline INCLUDING ALL);
CREATE TABLE p_inventory_reservations (LIKE inventory_reservations INCLUDING ALL);
CREATE TABLE p_inventory_products (LIKE inventory_products INCLUDING ALL);
CREATE TABLE p_outbox_events (LIKE outbox_events INCLUDING ALL);
CREATE TABLE p_sagas (LIKE sagas INCLUDING ALL);
-- Timelines were rows of their own when this was measured (saga migration 3).
CREATE TABLE p_saga_steps (id BIGINT GENERATED ALWAYS AS IDENTITY, saga_id TEXT NOT NULL,
  step TEXT NOT NULL, phase TEXT NOT NULL, outcome TEXT NOT NULL, attempt INTEGER NOT NULL,
  error TEXT, started_at_ms BIGINT NOT NULL, ended_at_ms BIGINT NOT NULL,
  PRIMARY KEY (saga_id, id));
CREATE TABLE p_locks (LIKE locks INCLUDING ALL);
INSERT INTO p_inventory_products SELECT 'SKU-' || g, 'p', 1000000000, 0, 1, 1
  FROM generate_series(0, 99) g;
INSERT INTO p_sagas SELECT lpad(g::text, 20, '0'), 'checkout', 'c' || g, 'RUNNING', 1, 1,
  repeat('x', 400), 0, NULL, NULL, NULL, g, 1, 1 FROM generate_series(1, 200000) g;
VACUUM ANALYZE;
