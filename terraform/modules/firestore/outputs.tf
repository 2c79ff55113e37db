output "database_id" {
  description = "ID of the database (the chart's backends.retrieval.firestore.database)."
  value       = google_firestore_database.rag.name
}

output "database_name" {
  description = "Resource name of the database, projects/<project>/databases/<id>."
  value       = google_firestore_database.rag.id
}
