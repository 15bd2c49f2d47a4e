"""The services the test suite needs, checked once before it starts (tests/conftest.py), so that
one line says what is missing and how to start it, instead of an error per test."""
import pika
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

START_REDIS = "start it: redis-server --daemonize yes (Debian: apt-get install redis-server)"
START_MARIADB = "start it: service mariadb start (Debian: apt-get install mariadb-server)"
START_RABBITMQ = "start it: service rabbitmq-server start (Debian: apt-get install rabbitmq-server)"
EVENTS_URL = "amqp://guest:guest@127.0.0.1:5672/"  # the tests' broker (tests/*/test_events.py)


def missing_services(database_url, redis_url, broker_url=None):
    """One line per service the suite cannot reach, with how to start it; [] when all answer.
    The broker (RabbitMQ) is checked when a broker_url is given."""
    missing = []
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as e:
        missing.append(f"Redis at {redis_url} ({type(e).__name__}); {START_REDIS}; "
                       "or point TEST_REDIS_URL elsewhere")
    finally:
        client.close()
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        server = create_engine(url.set(database=""), connect_args={"connect_timeout": 2})
        try:
            with server.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as e:
            shown = url.render_as_string(hide_password=True)
            missing.append(f"MariaDB at {shown} ({type(e.orig or e).__name__}); {START_MARIADB}; "
                           "or point TEST_DATABASE_URL elsewhere")
        finally:
            server.dispose()
    if broker_url:
        params = pika.URLParameters(broker_url)
        params.connection_attempts, params.socket_timeout = 1, 2
        try:
            pika.BlockingConnection(params).close()
        except (OSError, pika.exceptions.AMQPError) as e:
            missing.append(f"RabbitMQ at {params.host}:{params.port} ({type(e).__name__}); "
                           f"{START_RABBITMQ}")
    return missing
