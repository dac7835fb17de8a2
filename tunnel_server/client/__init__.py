"""The remote CLI's client side: it talks to a server's API only."""
