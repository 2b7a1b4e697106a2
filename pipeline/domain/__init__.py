"""What a pipeline is: definitions of nodes, parameter sets, states, and the stored records.

Nothing here runs work or sends a message; every other part of ``pipeline`` builds on it.
"""
