"""Notifications: the SMS outbox, the `Notifier` protocol with its Twilio and development back ends,
and the delivery pipeline (opt-out -> quiet hours -> rate limit -> claim -> send -> record, with retries).

The alert lifecycle enqueues texts with `alerts.notify.outbox.enqueue` inside its own transaction; the
worker delivers them with `alerts.notify.delivery.Delivery.run_once`. This package's modules are imported
by name (nothing is re-exported here) so that importing the tables does not import the Twilio library.
"""
