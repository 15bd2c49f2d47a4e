"""The batch jobs, run by one scheduler process (`flask jobs run`), never by web workers."""
