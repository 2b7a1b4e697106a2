"""The Celery entry points: the tasks that move work (``chain``), the operator's operations
run through Flower (``operations``), and the app that holds them (``app``). Everything they
do is in ``pipeline``, which never imports them."""
