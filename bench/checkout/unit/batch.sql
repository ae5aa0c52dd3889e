-- The same unit for 32 checkouts in one transaction, a statement per table;
-- the products are locked in SKU order, last, so batches never deadlock.
\set s random(1, 199968)
\set k random(0, 99)
SELECT nextval('pidb') AS b \gset
BEGIN;
SELECT id, data, version FROM p_sagas WHERE id IN (SELECT lpad((:s + g)::text, 20, '0') FROM generate_series(0, 31) g);
INSERT INTO p_orders SELECT lpad((:b::bigint + g)::text, 20, '0'), 'c-' || (:b::bigint + g), 'cust-1', 'EUR', 1200, 'PENDING', md5(g::text), 1, 1 FROM generate_series(0, 31) g;
INSERT INTO p_order_items SELECT lpad((:b::bigint + g)::text, 20, '0'), 1, 'SKU-' || ((:k + g * 7) % 100), 1, 1200 FROM generate_series(0, 31) g;
INSERT INTO p_order_timeline SELECT lpad((:b::bigint + g)::text, 20, '0'), 1, 'PENDING', 'created', 1 FROM generate_series(0, 31) g;
INSERT INTO p_inventory_reservations SELECT lpad((:b::bigint + g)::text, 20, '0'), 'ACTIVE', '[{"sku":"SKU-1","qty":1}]', 1, 1, 1 FROM generate_series(0, 31) g;
INSERT INTO p_outbox_events (event_id, type, aggregate_type, aggregate_id, data, created_at_ms, handled_at_ms) SELECT 'e' || t || '-' || (:b::bigint + g), CASE t WHEN 1 THEN 'order.created.v1' ELSE 'inventory.reserved.v1' END, 'order', lpad((:b::bigint + g)::text, 20, '0'), '{"order_id":"x","items":[{"sku":"SKU-1","qty":1,"unit_price":1200}],"total_amount":1200,"currency":"EUR"}', 1, 1 FROM generate_series(0, 31) g, generate_series(1, 2) t;
INSERT INTO p_locks SELECT 'payment:' || (:b::bigint + g), 'saga', 1, 1, 100, 1, 1, 1, 0 FROM generate_series(0, 31) g;
UPDATE p_sagas SET step = 3, version = version + 1, data = repeat('y', 400), updated_at_ms = 2 WHERE id IN (SELECT lpad((:s + g)::text, 20, '0') FROM generate_series(0, 31) g) AND version >= 0;
INSERT INTO p_saga_steps (saga_id, step, phase, outcome, attempt, started_at_ms, ended_at_ms) SELECT lpad((:s + g)::text, 20, '0'), s, 'action', 'ok', 1, 1, 1 FROM generate_series(0, 31) g, unnest(ARRAY['create_order', 'reserve_inventory']) s;
SELECT sku FROM p_inventory_products WHERE sku IN (SELECT 'SKU-' || ((:k + g * 7) % 100) FROM generate_series(0, 31) g) ORDER BY sku FOR UPDATE;
UPDATE p_inventory_products p SET reserved = reserved + x.n, updated_at_ms = 2 FROM (SELECT 'SKU-' || ((:k + g * 7) % 100) AS sku, count(*) AS n FROM generate_series(0, 31) g GROUP BY 1 ORDER BY 1) x WHERE p.sku = x.sku AND p.on_hand - p.reserved >= x.n;
COMMIT;
