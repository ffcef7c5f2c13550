-- Every change to model_registry is announced on channel 'model_registry' (payload: the
-- model_id; '*' after TRUNCATE). Workers LISTEN and reload at once, so failover by row update
-- reaches every replica in well under a second. Notifications are sent at commit.

CREATE FUNCTION model_registry_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('model_registry', OLD.model_id);
    ELSE
        PERFORM pg_notify('model_registry', NEW.model_id);
        IF TG_OP = 'UPDATE' AND OLD.model_id IS DISTINCT FROM NEW.model_id THEN
            PERFORM pg_notify('model_registry', OLD.model_id);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION model_registry_notify_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('model_registry', '*');
    RETURN NULL;
END;
$$;

CREATE TRIGGER model_registry_notify
    AFTER INSERT OR UPDATE OR DELETE ON model_registry
    FOR EACH ROW EXECUTE FUNCTION model_registry_notify();

CREATE TRIGGER model_registry_notify_truncate
    AFTER TRUNCATE ON model_registry
    FOR EACH STATEMENT EXECUTE FUNCTION model_registry_notify_truncate();
