<?php

namespace App\Models;

use Illuminate\Database\Eloquent\Model;
use Illuminate\Database\Eloquent\SoftDeletes;

/*
 * A stand-in for blazz's Contact model (482 lines, with traits, helpers and a phone-number
 * package this test does not carry): the table and the columns WhatsAppServiceClient reads
 * (uuid, workspace_id, phone).
 */
class Contact extends Model
{
    use SoftDeletes;

    protected $table = 'contacts';

    protected $guarded = [];
}
