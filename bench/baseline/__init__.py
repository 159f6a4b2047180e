"""The baseline the ingest benchmark compares wabus with: a plain Flask + Celery pipeline.

webapp.py (served by gunicorn, sync workers) checks the webhook's HMAC and enqueues a Celery task;
tasks.py (a prefork Celery worker) inserts the message into PostgreSQL. Configured only through
environment variables set by the benchmark: BENCH_BROKER_URL, BENCH_DATABASE_URL,
BENCH_WEBHOOK_SECRET, BENCH_TENANT.
"""
