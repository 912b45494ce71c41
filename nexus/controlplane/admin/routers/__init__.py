"""One APIRouter per admin resource."""
