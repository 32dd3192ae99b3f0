"""An IPMI worker with a fault injected into every operation, to show it still logs out.

    python tests/control/ipmi_fault_worker.py MODE [ipmi_worker options]

MODE:
- ``after-login``: an IndexError raised once the session is logged in, before
  the operation's first command (where a bug of ours or of pyghmi would hit);
- ``in-login``: the IndexError pyghmi's drain race raised in the measured run
  (``pop from an empty deque``, out of ``Session.wait_for_rsp`` inside the
  ``Session(...)`` constructor), raised there once the BMC has accepted the
  login, so the constructor never hands the session back.
"""

from __future__ import annotations

import sys
from typing import Any

from pyghmi.ipmi.private import session as pyghmi_session

from cwboot.control.power import ipmi_worker


def fail_after_login(sess: Any, *args: Any) -> Any:
    assert sess.logged
    raise IndexError("injected after login")


def fail_inside_login() -> None:
    original = pyghmi_session.Session.wait_for_rsp
    fired = set()

    def wait_for_rsp(cls: Any, timeout: Any = None, callout: bool = True) -> Any:
        result = original(timeout, callout)
        for handlers in list(cls.bmc_handlers.values()):
            for sess in list(handlers.values()):
                if sess.logged and id(sess) not in fired:
                    fired.add(id(sess))
                    raise IndexError("pop from an empty deque (injected)")
        return result

    pyghmi_session.Session.wait_for_rsp = classmethod(wait_for_rsp)  # type: ignore[method-assign,assignment]


if __name__ == "__main__":
    mode, *options = sys.argv[1:]
    if mode == "after-login":
        ipmi_worker._set_bootdev = fail_after_login  # type: ignore[assignment]
        ipmi_worker._power_state = fail_after_login
        ipmi_worker._chassis_control = fail_after_login
    elif mode == "in-login":
        fail_inside_login()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    raise SystemExit(ipmi_worker.main(options))
