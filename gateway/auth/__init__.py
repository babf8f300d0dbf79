"""Who a client is and what it may do: password file, identities, ACL rules.

Sans-IO like the broker core: the network layer runs the slow password check
off the event loop and hands the core an `Identity`; the core asks the ACL.
"""
