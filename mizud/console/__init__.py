"""The telnet admin console on adminport: one more front end of the API dispatcher."""
