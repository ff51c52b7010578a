"""Pure computation: grid helpers, patch arithmetic, metrics, the model card, errors.

Nothing here reads files or talks to a service.
"""
