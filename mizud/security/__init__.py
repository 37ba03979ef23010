"""What every front end shares to keep attackers out: the bans and the one lockout.

The API, the old interface, the console and SIP all report failed
credentials to the same L{lockout.Lockout}, which bans accounts and
addresses in L{bans.Bans}; their rows live in the store
(L{mizud.store.authstate}).  Nothing here knows a transport or an API shape.
"""
