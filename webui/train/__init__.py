"""The Train tab: ``command`` (launch choices -> argv), ``launcher`` (spawn, launch records), ``actions``
(check, start, abort, resume), ``view`` (the followed run's state), ``samples`` (trajectory browsing), ``tab``."""
