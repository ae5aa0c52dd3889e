-- One checkout through the saga's first unit (create the order, reserve its
-- stock, take the payment lock, move the saga), as Backbone runs it now:
-- one transaction per checkout, a statement per row.
\set s random(1, 200000)
\set k random(0, 99)
SELECT nextval('pid') AS o \gset
BEGIN;
SELECT id, data, version FROM p_sagas WHERE id = lpad(:s::text, 20, '0');
INSERT INTO p_orders VALUES (lpad(:o::text, 20, '0'), 'c-' || lpad(:o::text, 20, '0'), 'cust-1', 'EUR', 1200, 'PENDING', md5(lpad(:o::text, 20, '0')), 1, 1);
INSERT INTO p_order_items VALUES (lpad(:o::text, 20, '0'), 1, 'SKU-' || :k, 1, 1200);
INSERT INTO p_order_timeline VALUES (lpad(:o::text, 20, '0'), 1, 'PENDING', 'created', 1);
INSERT INTO p_outbox_events (event_id, type, aggregate_type, aggregate_id, data, created_at_ms, handled_at_ms) VALUES ('e1-' || lpad(:o::text, 20, '0'), 'order.created.v1', 'order', lpad(:o::text, 20, '0'), '{"order_id":"x","items":[{"sku":"SKU-1","qty":1,"unit_price":1200}],"total_amount":1200,"currency":"EUR"}', 1, 1);
INSERT INTO p_inventory_reservations VALUES (lpad(:o::text, 20, '0'), 'ACTIVE', '[{"sku":"SKU-1","qty":1}]', 1, 1, 1);
UPDATE p_inventory_products SET reserved = reserved + 1, updated_at_ms = 2 WHERE sku = 'SKU-' || :k AND on_hand - reserved >= 1;
INSERT INTO p_outbox_events (event_id, type, aggregate_type, aggregate_id, data, created_at_ms, handled_at_ms) VALUES ('e2-' || lpad(:o::text, 20, '0'), 'inventory.reserved.v1', 'reservation', lpad(:o::text, 20, '0'), '{"order_id":"x","items":[{"sku":"SKU-1","qty":1}]}', 1, 1);
INSERT INTO p_locks VALUES ('payment:' || lpad(:o::text, 20, '0'), 'saga', 1, 1, 100, 1, 1, 1, 0);
UPDATE p_sagas SET step = 3, version = version + 1, data = repeat('y', 400), updated_at_ms = 2 WHERE id = lpad(:s::text, 20, '0') AND version >= 0;
INSERT INTO p_saga_steps (saga_id, step, phase, outcome, attempt, started_at_ms, ended_at_ms) VALUES (lpad(:s::text, 20, '0'), 'create_order', 'action', 'ok', 1, 1, 1), (lpad(:s::text, 20, '0'), 'reserve_inventory', 'action', 'ok', 1, 1, 1);
COMMIT;
