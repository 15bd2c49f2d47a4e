"""tests/services.py: the line per missing service, here with nothing listening (port 1)."""
from tests.services import missing_services


def test_each_service_not_answering_gets_a_line_saying_how_to_start_it():
    missing = missing_services("mysql+pymysql://root:secret@127.0.0.1:1/coupon_test",
                               "redis://127.0.0.1:1/15", "amqp://guest:guest@127.0.0.1:1/")
    assert [line.split(" at ")[0] for line in missing] == ["Redis", "MariaDB", "RabbitMQ"]
    assert "RabbitMQ at 127.0.0.1:1 (" in missing[2]
    assert "service rabbitmq-server start" in missing[2]
    assert "secret" not in "".join(missing)


def test_the_broker_is_checked_only_when_asked():
    missing = missing_services("mysql+pymysql://root@127.0.0.1:1/coupon_test", "redis://127.0.0.1:1/15")
    assert not any(line.startswith("RabbitMQ") for line in missing)
